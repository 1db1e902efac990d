"""The real testbed: a namespaced tenant host, router and sink with real traffic."""
