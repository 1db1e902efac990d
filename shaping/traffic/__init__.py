"""Traffic and application models: what each application sends and how it experiences the network."""
