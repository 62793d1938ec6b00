"""Publishing a distilled student: its model card, the folder and token checks, the push (also from the trainer)."""

from .hub import PushArguments, check_files, check_student_folder, push_student, student_files
from .model_card import render_model_card, write_model_card

__all__ = [
    "PushArguments",
    "check_files",
    "check_student_folder",
    "push_student",
    "render_model_card",
    "student_files",
    "write_model_card",
]
