"""The built-in engines, each a plugin registered like any third-party one."""
