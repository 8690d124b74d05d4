"""The MCP face: tool declarations and lifespan (server), outputs as MCP blocks (content), stdio."""
