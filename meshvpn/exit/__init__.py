"""Exit side of streams: policy, DNS, bandwidth limits, outbound connections."""
