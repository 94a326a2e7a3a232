"""The Gradio front end of Pusa Studio: one tab per task over one ``pusa_core.engine.Engine``.

Kept free of imports: ``ui.zerogpu`` must load without gradio (it is imported before gradio on Spaces).
"""
