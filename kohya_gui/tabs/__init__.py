"""Gradio tab builders: training tabs, utilities, about, and the shared monitor/queue panel."""
