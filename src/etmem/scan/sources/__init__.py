"""The access sources: one module per kernel interface that tells which pages were used."""
