"""Development tools: set-up scripts, the real-ComfyUI harness, the demo runner."""
