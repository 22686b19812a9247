"""Packaging for massboot (tool settings live in pyproject.toml)."""

import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "massboot" / "__init__.py").read_text()).group(1)

setup(
    name="massboot",
    version=VERSION,
    description="gevent BOOTP/DHCP/PXE + TFTP boot server for mass deployment (pybootd successor)",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["massboot", "massboot.*"]),
    install_requires=[line.strip() for line in (HERE / "requirements.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")],
    # The compiled TFTP data path and DHCP codec (README "Performance"): optional, a machine
    # without gcc and python3-dev installs and runs the pure-Python ones ([tftpd] fast_path =
    # auto; the DHCP codec has no option).
    ext_modules=[Extension("massboot.tftp._fastpath", ["massboot/tftp/_fastpath.c"],
                           extra_compile_args=["-O2", "-ffp-contract=off"], optional=True),
                 Extension("massboot.dhcp._codec", ["massboot/dhcp/_codec.c"],
                           extra_compile_args=["-O2"], optional=True)],
    entry_points={"console_scripts": ["massboot = massboot.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Boot",
        "Topic :: System :: Networking",
    ],
)
