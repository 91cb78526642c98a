"""Build of the optional compiled sampler kernel (everything else is in pyproject.toml).

``volume._fused`` is an optional extension: where no C compiler works, setuptools reports
the failure and the install goes on; ``volume.fused`` then says in one line that the
PyTorch path is used. The kernel picks AVX-512, AVX2 or portable code at run time.
"""

from setuptools import Extension, setup

SOURCES = ["module.c", "k_avx512.c", "k_avx2.c", "k_generic.c"]

setup(ext_modules=[Extension(
    "volume._fused",
    sources=[f"volume/csrc/{s}" for s in SOURCES],
    depends=["volume/csrc/kernel.h", "volume/csrc/kernel_api.h"],
    extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-Wall"],
    optional=True,
)])
