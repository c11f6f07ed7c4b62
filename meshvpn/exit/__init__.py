"""The exit edge: where circuits leave for the internet (policy, DNS, bandwidth limits, TCP streams, the packet exit)."""
