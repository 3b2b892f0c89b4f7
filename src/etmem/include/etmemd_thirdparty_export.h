/*
 * etmemd_thirdparty_export.h: what upstream's third-party engines include: projects, engines, tasks and engine_ops.
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_THIRDPARTY_EXPORT_H
#define ETMEMD_THIRDPARTY_EXPORT_H

#include "etmem_engine.h"

#endif
