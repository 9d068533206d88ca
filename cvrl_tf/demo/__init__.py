"""`make demo`: run.py runs the whole pipeline on the embedded synthetic dataset through
the console scripts; report.py makes its table and plots."""
