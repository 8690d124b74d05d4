"""The MCP face: tool declarations and lifespan (server), a cell's result as a tool result
(results), outputs as MCP blocks (content), the model's instructions, stdio."""
