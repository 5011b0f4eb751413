"""The bus: connection, topology (as data), the confirmed publisher and the consumer loop."""
