"""SSH: paramiko connections through jump hosts (connection) and local port forwards (forward)."""
