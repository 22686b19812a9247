"""massboot: a gevent BOOTP/DHCP/PXE + TFTP boot server for mass deployment."""

__version__ = "0.1.0"
