"""Scoring against ground truth: object matching, AP/F1/PQ, seam vs interior."""
