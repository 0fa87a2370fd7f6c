"""hsmctl: the user CLI of the secrets broker (list, get, create, edit, delete, import, export,
devices, health, rotate-pin). hsmd.hsmctl.client speaks the REST API; hsmd.hsmctl.cli is the
command line. See docs/hsmctl.md."""
