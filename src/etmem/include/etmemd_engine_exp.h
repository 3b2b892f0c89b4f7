/*
 * etmemd_engine_exp.h: struct engine and struct engine_ops, as upstream's header of that name.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_ENGINE_EXP_H
#define ETMEMD_ENGINE_EXP_H

#include "etmem_engine.h"

#endif
