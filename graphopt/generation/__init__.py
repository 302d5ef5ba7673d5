"""Generation: greedy completions of prompts through the same model graph that scores them.

requests.py says what every generator takes and gives (GenerationRequest -> Completion)."""
