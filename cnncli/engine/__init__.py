"""The engine. (map to come)"""
