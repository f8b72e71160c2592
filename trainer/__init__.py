"""Kohya-style training engine. Run as `python -m trainer plan|preflight|run CONFIG`; never imports Gradio."""
__version__ = "0.1.0"
