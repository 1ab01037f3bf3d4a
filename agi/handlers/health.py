"""`health`: answers the stack's health check with OMNICC_STATUS=OK."""

from agi.protocol import AGISession


async def health(session: AGISession) -> None:
    await session.set_variable("OMNICC_STATUS", "OK")
