from .output import Output

__all__ = ["Output"]
