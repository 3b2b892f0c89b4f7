"""Build the Cython page decoder `etmem._scan` and the scan library for C engines
(`etmem/libetmemd_scan*.so`, plain C, soname libetmemd_scan.so); the metadata lives in
pyproject.toml, except the license (below)."""
import numpy
import setuptools
from Cython.Build import cythonize
from setuptools import Extension, setup

# The license is an SPDX expression (PEP 639). Isolated builds (pip, python -m build) get
# setuptools>=77 from pyproject.toml, which writes it as License-Expression; an in-place
# `python setup.py build_ext --inplace` runs with the interpreter's own setuptools, and
# one older than 77 rejects a license string in pyproject.toml, so it is set here.
if int(setuptools.__version__.split(".")[0]) >= 77:
    LICENSE = {"license_expression": "MIT"}
else:
    LICENSE = {"license": "MIT"}

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

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}) + [scan_library],
      **LICENSE)
