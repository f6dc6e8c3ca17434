"""The training engine on Lightning Fabric."""
