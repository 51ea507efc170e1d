// Operation engine (see engine/*.h).
