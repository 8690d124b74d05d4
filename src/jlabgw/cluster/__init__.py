"""Where gateways run and how they are reached: backends, hosts (local or SSH), SSH, schedulers."""
