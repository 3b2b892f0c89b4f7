"""Build the Cython page decoder `etmem._scan` and the scan library for C engines
(`etmem/libetmemd_scan*.so`, plain C, soname libetmemd_scan.so); all metadata lives in
pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "etmem._scan",
        ["src/etmem/_scan.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O2"],
    )
]
scan_library = Extension(
    "etmem.libetmemd_scan",
    ["src/etmem/csrc/etmemd_scan.c"],
    extra_compile_args=["-O2"],
    extra_link_args=["-Wl,-soname,libetmemd_scan.so"],
)

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}) + [scan_library])
