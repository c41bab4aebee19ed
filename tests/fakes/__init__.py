"""Stand-ins for servers that cannot run here (TWS / IB Gateway), speaking the real thing's wire format so
that the real client libraries are what the tests exercise."""
