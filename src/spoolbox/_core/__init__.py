"""The scheduler core: the Spooler (a facade over the router, settlement,
destination back-off and housekeeping), the transport hosts (hosts/), flush, and
what they stand on (the runtime interface, policy, slices and watchdog, critical
sections, idle policy).  Private: use the names re-exported by :mod:`spoolbox`."""
