"""Transport providers that ship with spoolbox (SMTP, IMAP, POP3, Maildir, ...)."""
