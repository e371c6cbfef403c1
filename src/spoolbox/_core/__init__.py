"""The scheduler core: slices, watchdog, idle policy, flush, critical sections,
transport hosts, the support object and the Spooler.  Private: use the names
re-exported by :mod:`spoolbox`."""
