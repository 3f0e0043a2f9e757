"""Test doubles and real-server helpers shared by the test suites and the benchmarks (never production code)."""
