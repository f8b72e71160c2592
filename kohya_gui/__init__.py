"""Kohya Studio's web UI (Gradio): forms generated from trainer.config, runner/queue, live monitor.

Never imports torch: the trainer, the environment check and the captioners run as subprocesses.
"""
__version__ = "0.1.0"
