"""Generated gRPC stubs (see shaping.service.gen_protos)."""
