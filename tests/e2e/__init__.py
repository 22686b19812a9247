"""End-to-end tests: a real PXE boot of a QEMU virtual machine from massboot."""
