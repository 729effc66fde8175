"""metalora"""
