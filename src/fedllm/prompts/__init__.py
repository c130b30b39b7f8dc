"""Hard (discrete) prompt selection across clients, and inspection of soft prompts.

Selection: every client scores candidate instructions on its private
held-out chats and sends back only a score table; the server ranks the
candidates, mutates the best and repeats (:func:`run_selection`).
Inspection: the vocabulary tokens nearest each learned virtual token
(:mod:`fedllm.prompts.inspect`).
"""

from fedllm.prompts.candidates import Candidate, builtin_candidates, initial_candidates
from fedllm.prompts.score import PromptClient, Score
from fedllm.prompts.select import Selection, SelectionError, select_prompt
from fedllm.prompts.session import SelectionRun, run_selection

__all__ = [
    "Candidate",
    "PromptClient",
    "Score",
    "Selection",
    "SelectionError",
    "SelectionRun",
    "builtin_candidates",
    "initial_candidates",
    "run_selection",
    "select_prompt",
]
