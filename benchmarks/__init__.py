"""Side-by-side speed and memory benchmarks of etprop's learners (``python -m benchmarks.run``)."""
