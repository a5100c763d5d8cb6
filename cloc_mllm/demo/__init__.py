"""``cloc-mllm demo``: a web page over a CLOC checkpoint and its LLaVA (draw a box, ask for a box).

``models`` holds what the page computes as plain functions (the tests call them for the expected
answers), ``app`` the Gradio page and its command, ``browser`` the headless Chromium that tests it and
takes the README's screenshot (``screenshot``).
"""
