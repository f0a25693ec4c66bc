#ifndef VMFACTORY_CARCHIVE_SHIM_H
#define VMFACTORY_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
#endif
