"""blockwise"""
