"""Vulnerability scanning (practice 5): the scan queue's worker, Trivy and its database, and reports."""
