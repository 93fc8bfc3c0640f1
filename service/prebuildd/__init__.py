"""prebuildd: keeps pools of prebuilt Coder workspaces warm, driven by PostgreSQL events."""

__version__ = "0.1.0"
