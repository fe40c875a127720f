"""``model.py`` files of Triton's python backend; :mod:`matserve.triton.repository` copies them into version folders."""
