"""Transport hosts: the spooler's side of one transport session (supervision, the
outbound, inbound and idle lanes, the support object) and isolated transports in a
child process."""
