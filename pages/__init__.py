"""Streamlit pages: UI only (see streamlit_app.py)."""
