"""Pure per-event logic. Nothing in this package imports pyflink."""
