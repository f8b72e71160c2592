"""Page CSS: the monitor's progress bar and the red/amber marks on fields with problems.

(A Python string rather than a .css file so a non-editable install needs no package-data entry.)
"""

CSS = """
/* progress bar of the monitor */
.ks-progress { padding: 8px 4px; }
.ks-progress-title { font-weight: 600; margin-bottom: 4px; }
.ks-bar { position: relative; height: 22px; border-radius: 6px; background: var(--neutral-200, #e5e7eb); overflow: hidden; }
.ks-fill { height: 100%; background: var(--primary-500, #f97316); transition: width 0.4s; }
.ks-progress.done .ks-fill { background: #16a34a; }
.ks-progress.failed .ks-fill { background: #dc2626; }
.ks-progress.stopped .ks-fill { background: #ca8a04; }
.ks-pct { position: absolute; inset: 0; text-align: center; line-height: 22px; font-size: 13px; font-weight: 600; }
.ks-progress-detail { font-size: 13px; margin-top: 4px; opacity: 0.85; }
/* problems shown in place of a field's help text */
.field-error { outline: 2px solid #dc2626; border-radius: 6px; }
.field-error [data-testid="block-info"], .field-error .info, .field-error span[data-testid="block-info"] { color: #dc2626 !important; font-weight: 600; }
.field-warning { outline: 1px dashed #ca8a04; border-radius: 6px; }
.family-note { margin: 0 0 6px 2px; }
"""
