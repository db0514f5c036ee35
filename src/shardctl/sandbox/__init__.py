"""A local Discord: REST + gateway emulator with fault injection for tests and benchmarks."""
