"""The studio hands every setting to the trainer in config.toml; what the user typed arrives unchanged,
however hostile: Windows paths, triple quotes, control characters, any Unicode."""
from __future__ import annotations

import pytest

import trainer.config as tc

HOSTILE = [
    r"C:\Users\me\lora",
    r"C:\Users\me\lora\x64",             # the old writer left `\x` unescaped, an invalid escape: the trainer refused the file
    '"""',                               # became an empty string
    "'''", 'a "quoted" \\" word',
    "tab\there, bell\a, nul\x00, esc\x1b, del\x7f, cr\rlf\n",   # control characters were changed
    "日本語 · emoji 🎨 · combining é · rtl \u202e",
    "\\\\server\\share\\", "trailing backslash \\", "[table]\nkey = 1", "# not a comment",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_string_survives_the_trip_to_the_trainer(tmp_path, text):
    config = tc.LoraConfig(training_comment=text, caption_prefix=text, output_name="toy",
                           train_data_dir=f"{text}/images", sample_prompts=f"{text}\nsecond")
    path = tc.save_trainer_toml(config, tmp_path / "config.toml")
    back = tc.load_config_file(path).config
    assert back.training_comment == text and back.caption_prefix == text
    assert back == config


def test_the_run_folder_of_a_queued_job_holds_a_toml_the_trainer_reads_back_exactly(tmp_path):
    from kohya_gui.jobqueue import JobQueue
    from kohya_gui.launching import enqueue

    config = tc.LoraConfig(training_comment=r"C:\Users\me\lora """ + '"""', output_name="toy")
    job = enqueue(JobQueue(tmp_path / "ws"), config, start=False)
    toml_path = next(a for a in job.argv if a.endswith("config.toml"))
    assert tc.load_config_file(toml_path).config == config
